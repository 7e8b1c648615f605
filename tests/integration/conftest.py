from tests.unit.server.conftest import database_url, postgres_server

__all__ = ["database_url", "postgres_server"]
