"""Train a teacher on labeled data only: ``python jobs/teacher.py --config FILE``.

The same job as ``python jobs/train.py --config FILE --role teacher`` (see jobs/train.py).
"""

import sys

from jobs.ray_entry import exit_code
from jobs.train import main

if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(role="teacher"), "jobs/teacher.py"))
