"""The local stack's PostgreSQL: the embedded server from the wheel (TCP, password, survives restarts) and
EVERGREEN_DATABASE_URL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from devtools.database import DATABASE_URL_ENV, EmbeddedPostgres, for_home, hide_password, stop_embedded


def test_embedded_server_over_tcp_with_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    db = for_home(tmp_path, prefix="t")
    try:
        db.create_databases(fresh=True)
        described = db.describe()
        assert described["kind"] == "embedded" and described["data_dir"] == str(tmp_path / "postgres")
        assert described["urls"]["airflow"] == f"postgresql+psycopg2://evergreen:***@127.0.0.1:{db.port}/t_airflow"
        assert db.password not in str(described)
        engine = sa.create_engine(db.url("mlflow"))
        with engine.begin() as conn:
            assert conn.execute(sa.text("select current_database()")).scalar() == "t_mlflow"
            conn.execute(sa.text("create table kept (x int)"))
        engine.dispose()
        wrong = sa.create_engine(db.url("mlflow").replace(db.password, "wrong-password"))
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            wrong.connect()

        # Stopped from the description alone (another process: `make stop`), started again with its data.
        assert stop_embedded(described) is True
        assert not EmbeddedPostgres(tmp_path / "postgres").running()
        again = for_home(tmp_path, prefix="t")
        assert (again.port, again.password) == (db.port, db.password)
        again.create_databases(fresh=False)
        engine = sa.create_engine(again.url("mlflow"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from kept")).scalar() == 0
        engine.dispose()
        again.create_databases(fresh=True)  # a new stack: empty databases
        engine = sa.create_engine(again.url("mlflow"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("select to_regclass('kept')")).scalar() is None
        engine.dispose()
    finally:
        stop_embedded(db.describe())
    assert not EmbeddedPostgres(tmp_path / "postgres").running()


def test_external_database_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://ci:s3cr%40t@db.example:6543/postgres")
    db = for_home(tmp_path, prefix="demo")
    assert (db.host, db.port, db.user, db.password) == ("db.example", 6543, "ci", "s3cr@t")
    assert db.url("airflow") == "postgresql+psycopg2://ci:s3cr%40t@db.example:6543/demo_airflow"
    assert db.describe() == {"kind": "external", "data_dir": None, "urls": {
        "airflow": "postgresql+psycopg2://ci:***@db.example:6543/demo_airflow",
        "mlflow": "postgresql+psycopg2://ci:***@db.example:6543/demo_mlflow"}}
    assert not (tmp_path / "postgres").exists()
    assert stop_embedded(db.describe()) is False
    monkeypatch.setenv(DATABASE_URL_ENV, "sqlite:///x.db")
    with pytest.raises(RuntimeError, match="must be postgresql://"):
        for_home(tmp_path)


def test_hide_password() -> None:
    assert hide_password("postgresql://u:p@h:1/d") == "postgresql://u:***@h:1/d"
    assert hide_password("postgresql+psycopg2://u:p%40x@h/d") == "postgresql+psycopg2://u:***@h/d"
