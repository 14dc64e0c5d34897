import sys

from onellm.demo.cli import main

sys.exit(main())
