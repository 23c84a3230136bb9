"""``python -m llama2_pipeline.commands.examples``: the same as ``llama2-pipeline examples``."""

import sys

from llama2_pipeline.commands.examples import main

sys.exit(main())
