"""What the tests share: processes (one launcher, one free port), protocol clients and the one
connect, application fixtures, and in-memory fakes of the store and the Moodle lookups for the
unit layer (tests/unit/). The benchmark (tools/benchmark/) uses the process helpers too."""
