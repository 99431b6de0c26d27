"""Throwaway servers on loopback, and the demo shop that seeds them.

Only what tests, benchmarks and ``strongroom demo`` start and fill: a PostgreSQL cluster
(``pgcluster``), SeaweedFS as S3 (``seaweed``), Redis (``redis``), free ports (``ports``) and the
multi-tenant shop's schema and data (``demo_schema.sql``, ``demo_data``). Nothing here backs up
or restores; the demo's flow is an interface (``strongroom.interfaces.demo``).
"""
