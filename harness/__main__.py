from harness.cli import run_main

run_main()
