"""The five Funnelcast services, one package each."""
