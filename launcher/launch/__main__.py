"""``python -m launcher.launch PLAN_OR_RUN_DIR [flags] [-- trainer flags]`` (launcher/launch/request.py)."""
import sys

from launcher.launch.request import main

if __name__ == "__main__":
    sys.exit(main())
