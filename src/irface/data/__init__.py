"""Data: readers (RecordIO, image folder, synthetic identities), `.bin` verification sets, transforms, loaders."""

from irface.data.transforms import INPUT_SIZE, normalize, to_nchw_tensor
from irface.data.verification import decode_image, decode_images, load_bin, read_bin, save_bin

__all__ = ["INPUT_SIZE", "normalize", "to_nchw_tensor", "decode_image", "decode_images", "load_bin", "read_bin", "save_bin"]
