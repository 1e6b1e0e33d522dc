"""The embedded runtime: Postgres and the Tansu broker as local processes, the supervisor that
starts every service beside them, and the `funnelcast` command line (`cli.main`)."""
