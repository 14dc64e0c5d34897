"""``python -m onellm.train CONFIG.yaml`` = ``onellm train CONFIG.yaml`` (torchrun and accelerate launch use -m)."""

import sys

from onellm.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
