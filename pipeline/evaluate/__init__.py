"""Evaluation of what ships and what LIO learned: every backend scored and timed (`score`), object
extent (`extent`, `localisation`, `figures`), and the report and model card from JSON alone (`render`,
`card`, `tables`, `runtimes`, `serving`)."""
