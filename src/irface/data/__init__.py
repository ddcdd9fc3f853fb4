"""Data: readers (RecordIO, image folder, synthetic identities), `.bin` verification sets, transforms, loaders."""

from irface.data.transforms import INPUT_SIZE, normalize, to_nchw_tensor
from irface.data.bin import load_bin, read_bin, save_bin
from irface.data.images import decode_image, decode_images

__all__ = ["INPUT_SIZE", "normalize", "to_nchw_tensor", "decode_image", "decode_images", "load_bin", "read_bin", "save_bin"]
