from ormb.cli.main import run

run()
