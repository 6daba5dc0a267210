"""Train a student on real and pseudo labels: ``python jobs/student.py --config FILE``.

The same job as ``python jobs/train.py --config FILE --role student`` (see jobs/train.py): the
config's ``pseudo`` lists the label stores, and modes ``joint`` (default), ``pretrain_finetune``
and ``finetune`` are described in core/training.py. On a cluster:
``ray job submit --working-dir . -- python jobs/student.py --config FILE``.
"""

import sys

from jobs.ray_entry import exit_code
from jobs.train import main

if __name__ == "__main__":
    sys.exit(exit_code(lambda: main(role="student"), "jobs/student.py"))
