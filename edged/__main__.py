import sys

from edged.app.cli import main

sys.exit(main())
