"""Training sets for the wind-turbine model: synthetic, imported from a CSV, or from the
fleet's captures, all in one prepared form (:mod:`edged_cloud.data.dataset`)."""
