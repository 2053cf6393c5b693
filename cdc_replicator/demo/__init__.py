"""The README's demo: a throwaway local PostgreSQL with live sample changes, replicated into a local lake."""
