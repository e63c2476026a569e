"""Run the provider as a Terraform plugin (the wrapper written by ``pgcrdr terraform install``).

stdout carries the plugin handshake: nothing else may be written there; logs go to stderr.
"""

from __future__ import annotations

import logging
import sys


def main() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="pgcrdr-provider %(levelname)s %(message)s")
    from tf.runner import run_provider

    from pgcrdr.terraform.provider import AivenProvider

    run_provider(AivenProvider(), sys.argv)


if __name__ == "__main__":
    main()
