"""`alignkit demo`: placeholder until the demo lands."""


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", default="runs/demo")


def run(args) -> None:
    raise NotImplementedError
