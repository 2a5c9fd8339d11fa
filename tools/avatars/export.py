"""Export the trained EMA weights as models/checkpoints/avatars-tiny (a diffusers
StableDiffusionPipeline folder, fp16 safetensors but for the tiny fp32 text encoder).

    python -m tools.avatars.export
"""

from tools.avatars import model_card, paths
from tools.avatars.train import AVATARS
from tools.shapes import export


def main() -> None:
    export.save_pipeline(export.build_pipeline(AVATARS), paths.CHECKPOINT_DIR)
    model_card.write(evaluation=None)


if __name__ == "__main__":
    main()
