from marketpipe.cli import main

raise SystemExit(main())
