"""The stability–plasticity report: collect results, leaderboard, Pareto frontier, correlations, plots.

* :mod:`.collect`: which result files belong to which method (directory convention, NAME=PATH);
* :mod:`.leaderboard`: the leaderboard table, the Pareto frontier, trainable-parameter counts;
* :mod:`.correlations`: Pearson / Spearman of geometry metrics against forgetting and target gain;
* :mod:`.plots`: the plane and spectrum figures (matplotlib, Agg);
* :mod:`.reference`: published points read from a user-given CSV;
* :mod:`.build`: putting it together into a report directory.
"""
