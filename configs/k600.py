"""X-ViT-B/16 on Kinetics-600: the Kinetics-400 recipe with 600 classes (the released
xvit_b16_16_k600.pth was trained this way; configs/official/k600_xvit_b16.py evaluates it).

    python -m xvit_jax.main --config=configs/k600.py --workdir=DIR --config.init_from=ViT-B_16.npz
"""

from xvit_jax import config_lib

common = config_lib.import_file("common.py", next_to=__file__)
k400 = config_lib.import_file("k400.py", next_to=__file__)


def get_config(arg="16"):
  """arg: frames (8 or 16), or "smoke" for a 3-step run of a tiny model on a tiny prepared dataset."""
  if arg == "smoke":
    return common.smoke(get_config("8"))
  return k400.kinetics("kinetics600", frames=int(arg), train_videos=390_000)  # about 390k training videos
