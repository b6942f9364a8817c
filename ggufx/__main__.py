from ggufx.cli import run

run(prog_name="ggufx")
