"""balancewatch: a durable Postgres history of Solana wallet token balances."""

__version__ = "0.1.0"
