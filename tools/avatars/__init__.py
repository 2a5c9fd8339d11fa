"""Train, export and evaluate avatars-tiny (a tiny text-to-image pipeline for cartoon
portraits) and the avatar attribute checker, from procedurally drawn portraits."""
