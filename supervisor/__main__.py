from agentsup.cli import main

raise SystemExit(main())
