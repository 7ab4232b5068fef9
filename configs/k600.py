"""X-ViT-B/16 on Kinetics-600: the Kinetics-400 recipe with 600 classes (the released
xvit_b16_16_k600.pth was trained this way; configs/official/k600_xvit_b16.py evaluates it).

    python -m xvit_jax.main --config=configs/k600.py --workdir=DIR --config.init_from=ViT-B_16.npz
"""

from xvit_jax import config_lib


def get_config(arg="16"):
  """arg: frames (8 or 16), or "smoke" for a 3-step run of a tiny model on a tiny prepared dataset."""
  if arg == "smoke":
    return config_lib.smoke(get_config("8"))
  # about 390k training videos
  return config_lib.kinetics_recipe("kinetics600", num_classes=600, frames=int(arg), train_videos=390_000)
