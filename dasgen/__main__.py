"""``python -m dasgen`` (and ``torchrun -m dasgen``) runs the CLI."""

from dasgen.cli import app

if __name__ == "__main__":
    app(prog_name="dasgen")
