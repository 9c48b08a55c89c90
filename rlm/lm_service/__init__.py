"""The LM service: every LM call, child RLM and tool call of a run, routed (`router`), checked
(`requests`), limited and accounted (`budget`), optionally answered from the sub-call cache
(`cache`); `service.LMService` is the one path through them. Transports over it:
`rlm.transport`."""
