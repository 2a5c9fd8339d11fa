"""README.md model cards for the exported folders, filled in from the training
checkpoints (steps, time) and, when given, the evaluation figures."""

from tools.shapes import data, paths, resumable, train
from tools.shapes.tokenizer import MAX_LENGTH

PROMPT_FORM = "`a {colour} {shape} on a {colour} background`"


def stage_summary(stage: str) -> str:
    saved = resumable.load_checkpoint(paths.WORKDIR / stage)
    return f"{saved['step']} steps in {saved['seconds'] / 60:.0f} min"


def evaluation_section(evaluation: dict | None, keys: list[str]) -> str:
    if evaluation is None:
        return (
            "Not evaluated yet: run `python -m tools.shapes.evaluate --write-cards`.\n"
        )
    rows = "".join(
        f"| {key} | {evaluation[key]:.3g} |\n" for key in keys if key in evaluation
    )
    return (
        f"`python -m tools.shapes.evaluate` on {evaluation['held_out_images']} held-out images (parameter tuples"
        f" never drawn in training), {evaluation['steps']} DPM-Solver steps, guidance {evaluation['guidance_scale']}:\n\n"
        f"| measure | value |\n|---|---|\n{rows}"
    )


def pipeline_card(evaluation: dict | None) -> str:
    latents = train.load_latents()
    return f"""# shapes-tiny

Loom's built-in default text-to-image model: a tiny Stable Diffusion-style pipeline the project
trained from scratch on two CPU cores, so a fresh install makes a real image without downloading
anything. Stock diffusers/transformers classes in safetensors (fp16, the 0.5 MB text encoder fp32):
`StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)` gives an fp32 pipeline, the
right choice on the CPU; on a GPU pass `dtype=torch.float16`.

## What it can and cannot draw
It draws {data.IMAGE_SIZE}x{data.IMAGE_SIZE} images of one circle, square or triangle in red, green, blue,
yellow, white or black on a plain background of another of those colours, from prompts of the form
{PROMPT_FORM}.
Nothing else: other words are valid input (the tokenizer falls back to bytes) but mean nothing to the
model; other sizes are untrained; the same colour for shape and background never occurs in training.

## How it was trained (`tools/shapes/`, deterministic, seed {train.SEED})
- Data: images drawn on the fly with PIL at {data.SUPERSAMPLE}x and box-downsampled (anti-aliased edges), shape
  size {data.MIN_SHAPE_SIZE}-{data.MAX_SHAPE_SIZE} px at a random position; one parameter tuple (shape, colours,
  size, position) in {data.HELD_OUT_ONE_IN} is held out of training for evaluation.
- VAE (AutoencoderKL 16/32/64 channels, 4x down-sampling to {data.IMAGE_SIZE // 4}x{data.IMAGE_SIZE // 4}x4 latents):
  {stage_summary("vae")}, 32x32 crops then full images; reconstruction PSNR {latents["psnr"]:.1f} dB;
  scaling factor {latents["scaling_factor"]:.4f}.
- UNet (UNet2DConditionModel 32/64/128, cross-attention 64) and text encoder (CLIPTextModel, width 64,
  2 layers, {MAX_LENGTH} positions) trained jointly on {train.NUM_TRAINING_IMAGES} pre-encoded images:
  {stage_summary("unet")}, batch {train.SHAPES.unet_batch}, v-prediction, cosine (squaredcos_cap_v2) schedule,
  min-SNR weighting (gamma {train.MIN_SNR_GAMMA:g}), {train.CAPTION_DROPOUT:.0%} caption dropout for classifier-free
  guidance; the exported weights are the EMA.
- Tokenizer: CLIPTokenizer over CLIP's 256 byte symbols plus merges that make every caption word one token.

## Recommended use
{data.IMAGE_SIZE}x{data.IMAGE_SIZE} (the pipeline's default size), DPMSolverMultistepScheduler (shipped config), 20 steps,
guidance 4.

## Evaluation
{evaluation_section(evaluation, ["foreground_colour_accuracy", "background_colour_accuracy", "shape_accuracy"])}"""


def controlnet_card(evaluation: dict | None) -> str:
    return f"""# shapes-tiny-canny

Edge ControlNet for `models/checkpoints/shapes-tiny`: given a white-on-black Canny edge map
({data.IMAGE_SIZE}x{data.IMAGE_SIZE}, 3 channels, values 0-1 as diffusers pipelines feed it), the shape takes the
outline and position of the edges while the prompt still picks the colours. Load with
`ControlNetModel.from_pretrained(folder, local_files_only=True)` and
`StableDiffusionControlNetPipeline`.

## How it was trained
`ControlNetModel.from_unet` of the shapes-tiny UNet (conditioning embedding 16/32/64 channels), UNet and
text encoder frozen, on OpenCV Canny edges (thresholds 100/200) of the same procedurally drawn images:
{stage_summary("controlnet")}, batch {train.CONTROLNET_BATCH}; the exported weights are the EMA.

## What it can and cannot do
It follows edge maps of single circles, squares and triangles like the training images; edges of
other objects give unpredictable results, and it knows nothing beyond the base model's six colours.
It is short-trained: on a few held-out edge maps the shape comes out misplaced, too small or missing
(hence the minimum IoU below), so judge it by the mean.

## Evaluation
{evaluation_section(evaluation, ["controlnet_mean_iou", "controlnet_min_iou", "controlnet_foreground_colour_accuracy", "controlnet_background_colour_accuracy"])}"""


def write_all(evaluation: dict | None) -> None:
    (paths.CHECKPOINT_DIR / "README.md").write_text(pipeline_card(evaluation))
    controlnet_exported = (paths.CONTROLNET_DIR / "config.json").exists()
    controlnet_trained = resumable.checkpoint_path(
        paths.WORKDIR / "controlnet"
    ).exists()
    if controlnet_exported and controlnet_trained:
        (paths.CONTROLNET_DIR / "README.md").write_text(controlnet_card(evaluation))
