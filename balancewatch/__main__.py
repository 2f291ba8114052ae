from balancewatch.cli import main

raise SystemExit(main())
