"""``python -m onellm.serving serve CHECKPOINT``."""

from onellm.serving.cli import main

if __name__ == "__main__":  # vLLM spawns worker processes: starting an engine must be guarded
    main()
