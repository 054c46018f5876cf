"""Storage: the bus database (connections with deadlines, the outbox, migrations, the embedded
PostgreSQL) and the SQL the library runs, one ``sql/<concern>.sql`` file per concern."""
