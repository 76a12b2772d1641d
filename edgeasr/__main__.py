import sys

from edgeasr.cli import main

sys.exit(main())
