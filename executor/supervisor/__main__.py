import sys

from executor.supervisor.daemon import main

sys.exit(main(sys.argv[1:]))
