"""The ONNX export drops into existing ONNX Runtime ArcFace code unchanged.

`ArcFaceLikeConsumer` restates what insightface's ArcFaceONNX-style recognisers do, with numpy in
place of OpenCV: decide the input scaling from the first graph nodes (an MXNet-converted model has
its own Sub/Mul, and is then fed raw pixels), read the input name and size off the session, build
the blob as cv2.dnn.blobFromImages(imgs, 1/127.5, size, (127.5,)*3, swapRB=True) does from BGR
images, and take output[0]. Nothing from irface is used on the consumer's side.
"""

import numpy as np
import pytest

from infer_export_util import faces, save_state_dict, torch_embed
from irface.export import ExportOptions, export_model, relative_error

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class ArcFaceLikeConsumer:
    def __init__(self, model_file):
        graph = onnx.load(model_file).graph
        find_sub = any(n.name.startswith(("Sub", "_minus")) for n in graph.node[:8])
        find_mul = any(n.name.startswith(("Mul", "_mul")) for n in graph.node[:8])
        self.input_mean, self.input_std = (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)
        self.session = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
        cfg = self.session.get_inputs()[0]
        self.input_name = cfg.name
        self.input_size = tuple(cfg.shape[2:4][::-1])  # (width, height): must be plain integers
        self.output_names = [o.name for o in self.session.get_outputs()]
        assert len(self.output_names) == 1

    def blob_from_images(self, bgr_images):
        blobs = []
        for img in bgr_images:
            assert img.shape[1::-1] == self.input_size  # aligned crops come at the model's size
            rgb = img[:, :, ::-1].astype(np.float32)  # swapRB
            blobs.append(((rgb - self.input_mean) * (1.0 / self.input_std)).transpose(2, 0, 1))
        return np.stack(blobs).astype(np.float32)

    def get_feat(self, imgs):
        if not isinstance(imgs, list):
            imgs = [imgs]
        blob = self.blob_from_images(imgs)
        return self.session.run(self.output_names, {self.input_name: blob})[0]


@pytest.mark.parametrize("fixed_batch", [None, 1])
def test_arcface_style_consumer_gets_pytorch_embeddings(tmp_path, fixed_batch):
    model = save_state_dict(tmp_path / "b.pth")
    out = tmp_path / "w600k_like.onnx"
    export_model(tmp_path / "b.pth", out, ExportOptions(batch_size=fixed_batch))
    consumer = ArcFaceLikeConsumer(str(out))
    assert (consumer.input_mean, consumer.input_std) == (127.5, 127.5)
    assert consumer.input_size == (16, 16)
    rgb = faces(7)
    bgr = [img[:, :, ::-1].copy() for img in rgb]  # what cv2.imread would hand the consumer
    ref = torch_embed(model, rgb)
    one = consumer.get_feat(bgr[0])
    assert one.shape == (1, 16) and relative_error(one, ref[:1]) < 1e-4
    if fixed_batch is None:
        many = consumer.get_feat(bgr)
        assert many.shape == (7, 16) and relative_error(many, ref) < 1e-4
