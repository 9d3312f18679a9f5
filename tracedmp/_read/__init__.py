"""What reads traces afterwards: reader, report, timeline, explain.

Never imported by ``tracedmp._runtime``: a traced child never loads any of it.
"""
