import sys

from shoal.mesh.daemon import main

sys.exit(main())
