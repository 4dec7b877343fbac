"""What we know about PostgreSQL servers, shared by the adapters whose drivers talk to one.

psycopg 3, psycopg2 and asyncpg (the last two under SQLAlchemy) all meet the
same server, the same pgbouncer and the same libpq rules: the classification
table (:mod:`._rules`, with the server's translated messages in
:mod:`._messages`) and how libpq counts a connect timeout (:mod:`._libpq`).
Plain data and pure functions: nothing here imports a driver, so an adapter
can use it whatever driver the application installed.
"""
