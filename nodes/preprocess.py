"""ControlNet preprocessors (controlnet-aux): image in, hint out.

Weightless detectors (canny, standard lineart) run as they are; the content shuffle is drawn
here, from a generator of its own rather than numpy's process-wide one. Detectors with
weights (HED, PidiNet, MLSD, lineart, lineart anime, normal BAE, MiDaS, Zoe, OpenPose) read
their file from models/annotators (the file names of the lllyasviel/Annotators repository,
which is what controlnet-aux's from_pretrained expects in a local folder); nothing is ever downloaded, and a missing file is named in the error.
Those files are pickles, so they also need the allow_pickle setting, and even then they are
only read where controlnet-aux's own `torch.load` calls cannot unpickle arbitrary objects:
torch >= 2.6 (weights-only by default) without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.

An input that already is a hint (a ControlHint, e.g. the output of another preprocessor)
passes straight through.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.models import ModelNotFound
from engine.node import node
from engine.settings import Settings

from ._common import fingerprint_model
from .control_types import ControlHint
from .types import Image

if TYPE_CHECKING:
    import numpy as np

Resolution = Annotated[int, Field(ge=64, le=4096, description="detection resolution (short side)")]

# detector -> (module, class, files it needs in models/annotators, from_pretrained keyword -> file)
WEIGHTED: dict[str, tuple[str, str, dict[str, str]]] = {
    "hed": ("controlnet_aux.hed", "HEDdetector", {"filename": "ControlNetHED.pth"}),
    "pidinet": ("controlnet_aux.pidi", "PidiNetDetector", {"filename": "table5_pidinet.pth"}),
    "mlsd": ("controlnet_aux.mlsd", "MLSDdetector", {"filename": "mlsd_large_512_fp32.pth"}),
    "lineart": ("controlnet_aux.lineart", "LineartDetector",
                {"filename": "sk_model.pth", "coarse_filename": "sk_model2.pth"}),
    "lineart_anime": ("controlnet_aux.lineart_anime", "LineartAnimeDetector", {"filename": "netG.pth"}),
    "normal_bae": ("controlnet_aux.normalbae", "NormalBaeDetector", {"filename": "scannet.pt"}),
    "midas": ("controlnet_aux.midas", "MidasDetector", {"filename": "dpt_hybrid-midas-501f0c75.pt"}),
    "zoe": ("controlnet_aux.zoe", "ZoeDetector", {"filename": "ZoeD_M12_N.pt"}),
    "openpose": ("controlnet_aux.open_pose", "OpenposeDetector",
                 {"filename": "body_pose_model.pth", "hand_filename": "hand_pose_model.pth",
                  "face_filename": "facenet.pth"}),
}
WeightedName = Literal["hed", "pidinet", "mlsd", "lineart", "lineart_anime", "normal_bae", "midas",
                       "zoe", "openpose"]


def _to_uint8(image: Image, index: int) -> np.ndarray:
    import numpy as np
    return (image.pixels[index].clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)


def _to_hint(arrays: list[np.ndarray], kind: str, size: tuple[int, int]) -> ControlHint:
    """Hint tensor [B, H, W, 3] at the input's size from detector outputs (HxW or HxWxC uint8)."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    out = []
    for arr in arrays:
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if arr.shape[:2] != (size[1], size[0]):
            arr = np.asarray(PILImage.fromarray(arr[..., :3]).resize(size, PILImage.BILINEAR))
        out.append(torch.from_numpy(arr[..., :3].astype(np.float32) / 255.0))
    return ControlHint(torch.stack(out), kind=kind)


def run_detector(image: Image, kind: str, detect: Any) -> ControlHint:
    """Apply `detect(uint8 HxWx3) -> array` to each image of the batch; hints pass through."""
    if isinstance(image, ControlHint):
        return image
    arrays = [detect(_to_uint8(image, i)) for i in range(image.batch)]
    return _to_hint(arrays, kind, (image.width, image.height))


def detector_class(module: str, name: str) -> type:
    """A controlnet-aux detector class. Importing the package pulls in every detector and warns
    about optional extras and renamed timm modules that none of these nodes use: noise the
    person running a graph cannot act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(module), name)


@node("canny", category="control/preprocess", version=1)
def canny(image: Image, low_threshold: Annotated[int, Field(ge=0, le=255)] = 100,
          high_threshold: Annotated[int, Field(ge=0, le=255)] = 200) -> ControlHint:
    """Canny edge map (white edges on black), at the image's own size."""
    if low_threshold > high_threshold:
        raise NodeInputError("low_threshold", f"{low_threshold} is above high_threshold {high_threshold}")
    detector = detector_class("controlnet_aux.canny", "CannyDetector")()
    return run_detector(image, "canny", lambda a: detector(
        a, low_threshold, high_threshold, detect_resolution=min(a.shape[:2]),
        image_resolution=min(a.shape[:2]), output_type="np"))


@node("content_shuffle", category="control/preprocess", version=1)
def content_shuffle(image: Image, seed: Annotated[int, Field(ge=0, lt=2**32)] = 0) -> ControlHint:
    """Randomly warped copy of the image (for the shuffle ControlNet): each pixel is taken from
    where two smooth random fields point. The fields come from a generator of the node's own
    (never the process-wide RNG, which other runs share), so the node is seeded and cacheable."""
    import torch
    import torch.nn.functional as F

    if isinstance(image, ControlHint):
        return image
    generator = torch.Generator().manual_seed(seed)
    height, width, cell = image.height, image.width, 256

    def smooth_field() -> torch.Tensor:
        """[H, W] in 0..1: uniform noise on a coarse grid, bicubically enlarged and cropped."""
        coarse = torch.rand(1, 1, height // cell + 2, width // cell + 2, generator=generator, dtype=torch.float64)
        fine = F.interpolate(coarse, size=(height + 2 * cell, width + 2 * cell), mode="bicubic",
                             align_corners=False)[0, 0, cell:cell + height, cell:cell + width]
        return (fine - fine.min()) / (fine.max() - fine.min()).clamp_min(1e-12)

    grid = torch.stack([smooth_field() * 2 - 1, smooth_field() * 2 - 1], dim=-1).float()
    pixels = F.grid_sample(image.pixels.permute(0, 3, 1, 2), grid.expand(image.batch, -1, -1, -1),
                           mode="bilinear", align_corners=True)
    return ControlHint(pixels.permute(0, 2, 3, 1).contiguous(), kind="shuffle")


@node("lineart_standard", category="control/preprocess", version=1)
def lineart_standard(image: Image, sigma: Annotated[float, Field(gt=0, le=50)] = 6.0,
                     intensity_threshold: Annotated[int, Field(ge=0, le=255)] = 8) -> ControlHint:
    """Line drawing from a difference of Gaussians (no weights)."""
    import numpy as np
    detector = detector_class("controlnet_aux.lineart_standard", "LineartStandardDetector")()
    return run_detector(image, "lineart_standard", lambda a: np.asarray(detector(
        a, guassian_sigma=sigma, intensity_threshold=intensity_threshold,
        detect_resolution=min(a.shape[:2]), output_type="np")))


@node("hint_from_image", category="control/preprocess", version=1)
def hint_from_image(image: Image, invert: bool = False) -> ControlHint:
    """Use an image as it is as a hint (e.g. a hand-drawn scribble or a saved depth map)."""
    pixels = image.pixels
    return ControlHint(1.0 - pixels if invert else pixels, kind="image")


def _annotator_files(ctx: Context, detector: str) -> dict[str, str]:
    """from_pretrained keyword -> file name, after checking every file is in models/annotators."""
    _, _, files = WEIGHTED[detector]
    folders = ctx.models.paths.folders("annotators")
    missing = []
    for name in files.values():
        try:
            ctx.models.paths.resolve("annotators", name)
        except ModelNotFound:
            missing.append(name)
    if missing:
        raise NodeInputError("detector", f"the {detector} preprocessor needs {', '.join(missing)} in "
                                         f"models/annotators (searched {', '.join(map(str, folders))}); "
                                         "copy it from the lllyasviel/Annotators repository")
    if not ctx.settings.allow_pickle:
        raise NodeInputError("detector", f"the {detector} weights ({', '.join(files.values())}) are pickle "
                                         "files, which can run code when loaded; opt in with the "
                                         "allow_pickle setting")
    unsafe = unrestricted_torch_load()
    if unsafe:
        raise NodeInputError("detector", f"the {detector} weights are read by controlnet-aux with "
                                         f"torch.load's defaults, which here would unpickle arbitrary "
                                         f"objects ({unsafe}); refusing to load them")
    return files


def unrestricted_torch_load() -> str | None:
    """Why a bare `torch.load(path)` would run a full unpickler in this process, or None.

    controlnet-aux calls torch.load without `weights_only`; its files are only safe to read
    where that default is the restricted, weights-only unpickler."""
    import torch

    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 6):
        return f"torch {torch.__version__} unpickles anything by default; install torch >= 2.6"
    if os.getenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        return "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set"
    return None


def _annotator_fingerprint(detector: str, settings: Settings, **_) -> str:
    return "|".join(fingerprint_model(settings, "annotators", f) for f in WEIGHTED[detector][2].values())


@node("preprocess", category="control/preprocess", version=1, fingerprint=_annotator_fingerprint)
def preprocess(ctx: Context, image: Image, detector: WeightedName,
               resolution: Resolution = 512) -> ControlHint:
    """Run a controlnet-aux detector with weights (HED, MLSD, lineart, normals, depth, pose ...)
    loaded from models/annotators; the hint comes back at the image's size."""
    import numpy as np
    if isinstance(image, ControlHint):
        return image
    module, cls_name, _ = WEIGHTED[detector]
    files = _annotator_files(ctx, detector)
    folder = ctx.models.paths.resolve("annotators", next(iter(files.values()))).parent

    def load():
        cls = detector_class(module, cls_name)
        model = cls.from_pretrained(str(folder), **files)
        return model.to(ctx.settings.device) if hasattr(model, "to") else model

    # Keyed by the files' content like every model: an edited file is never served from memory.
    identity = ("annotator", detector, _annotator_fingerprint(detector, ctx.settings), ctx.settings.device)
    model = ctx.models.get(identity, load)
    return run_detector(image, detector, lambda a: np.asarray(model(
        a, detect_resolution=resolution, image_resolution=resolution, output_type="np")))
