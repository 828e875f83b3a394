-- On the PostgreSQL server (psql as the postgres user): a role and a database for
-- CrowdSec. Both LAPIs use them; the first LAPI to start creates the tables.
CREATE ROLE crowdsec LOGIN PASSWORD 'change-me';
CREATE DATABASE crowdsec OWNER crowdsec;
