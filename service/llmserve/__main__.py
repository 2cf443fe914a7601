"""`python -m llmserve` is the `llmserve` command."""

import sys

from llmserve.cli import main

sys.exit(main())
