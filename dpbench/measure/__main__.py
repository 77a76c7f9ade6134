import sys

from dpbench.measure.child import main

sys.exit(main())
