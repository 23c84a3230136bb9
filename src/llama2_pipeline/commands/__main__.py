"""``python -m llama2_pipeline.commands``: the ``llama2-pipeline`` command without its script."""

import sys

from llama2_pipeline.commands import main

sys.exit(main())
