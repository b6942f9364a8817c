from ggufx.cli import main

main(prog_name="ggufx")
