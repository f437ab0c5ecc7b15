import sys

from adapt3d.cli import main

sys.exit(main())
