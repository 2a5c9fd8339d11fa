"""Export the trained EMA weights as diffusers folders (safetensors, fp16 but for
the tiny text encoder):

models/checkpoints/shapes-tiny/        StableDiffusionPipeline
models/controlnet/shapes-tiny-canny/   ControlNetModel

python -m tools.shapes.export
"""

import torch
from diffusers import StableDiffusionPipeline

from tools.shapes import model_cards, models, paths, resumable, train


def build_pipeline(recipe: train.Recipe = train.SHAPES) -> StableDiffusionPipeline:
    tokenizer, text_encoder, unet = train.load_trained_unet(recipe)
    vae = train.load_vae(recipe)
    vae.register_to_config(scaling_factor=train.load_latents(recipe)["scaling_factor"])
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=models.make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_trained_controlnet(unet):
    controlnet = models.make_controlnet(unet)
    saved = resumable.load_checkpoint(paths.WORKDIR / "controlnet")
    controlnet.load_state_dict(saved["controlnet_ema"]["averaged"])
    return controlnet


def save_pipeline(pipeline: StableDiffusionPipeline, folder) -> None:
    pipeline.to(torch.float16)
    # diffusers loads models in fp32 unless told otherwise, but transformers keeps
    # the stored dtype: an fp16 text encoder would make a plain from_pretrained()
    # pipeline feed fp16 embeddings to an fp32 UNet and fail. Kept fp32 (0.5 MB).
    pipeline.text_encoder.to(torch.float32)
    pipeline.save_pretrained(folder, safe_serialization=True)
    print(f"pipeline -> {folder}")


def main() -> None:
    pipeline = build_pipeline()
    controlnet_trained = resumable.checkpoint_path(
        paths.WORKDIR / "controlnet"
    ).exists()
    controlnet = load_trained_controlnet(pipeline.unet) if controlnet_trained else None
    save_pipeline(pipeline, paths.CHECKPOINT_DIR)
    if controlnet is not None:
        controlnet.to(torch.float16).save_pretrained(
            paths.CONTROLNET_DIR, safe_serialization=True
        )
        print(f"controlnet -> {paths.CONTROLNET_DIR}")
    model_cards.write_all(evaluation=None)


if __name__ == "__main__":
    main()
