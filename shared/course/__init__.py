"""The course around the engine: the syllabus, which day provides what (registry), the learner's
progress, the README table, lessons, and the pytest plugin the checkers run under."""
