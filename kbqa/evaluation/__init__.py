"""`kbqa eval`: how good a knowledge base is, measured on the user's own questions.

cases ──► run (retrieval pass; the whole chain unless retrieval-only) ──► records
records ──► metrics (hit@k, MRR, refusal, fact recall, citation, latency) ──► summary
records ──► calibration (the KB's own min_relevance, with its curve)
summary ──► report (rich table, JSON, HTML page with plots)
"""
