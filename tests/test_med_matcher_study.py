"""The ``study`` protocol's medical matcher (MedMCQA, MedQA, PubMedQA) follows the PEFT-Arena study's
``third_party/med_eval/utils/extract_answer.py`` (``extract_overall_answer`` -> ``match_choice``, last
answer). Every expected letter below is worked out by hand from the study's rules, in order:

  0. the text after the last "## Final Response\\n\\n" (else all of it);
  1. the LAST "answer is" (lower case) + optional whitespace + a capital A-N (any letter of A-N,
     whatever follows it; "(A)" or "**A**" do not match this rule);
  2. else the LAST capital option letter (first n of A-N) with, before it, the start of the text, a
     non-word character or a CJK ideograph, and after it a non-word character, a CJK ideograph or
     the end; "A" followed by a space (the article) never counts; the character after a letter is
     consumed, so a letter right after it has nothing before it ("B C" -> B, "A/B" -> A);
  3. else the option whose text occurs last in the lower-cased text (substring; tie -> earlier option);
  4. else the option with the highest difflib ratio 2*M/(len(option)+len(text)) against the
     lower-cased text (tie, zeros included -> the later option).

There is no \\boxed{} step: a boxed letter is found by rule 2 like any bracketed letter.
"""

from __future__ import annotations

import pytest

from peftarena_cli.evaluation.scorers.choice_study import extract_study, score_choice_study

MC = ["aspirin", "heparin", "warfarin", "insulin"]          # A B C D
PQ = ["yes", "no", "maybe"]                                 # A B C (PubMedQA)
TEN = [f"drug{i}" for i in range(10)]                       # A .. J


# --- rule 1: "answer is" + a capital A-N, the last one --------------------------------------------
ANSWER_IS = [
    ("The answer is B", "B"),
    ("The answer is B.", "B"),
    ("the answer is C because of the INR", "C"),
    ("The correct answer is D", "D"),
    ("The final answer is A", "A"),
    ("Therefore the answer is A patient-specific choice", "A"),   # no article exception in rule 1
    ("answer isB", "B"),                                          # zero whitespace allowed
    ("The answer is\nC", "C"),
    ("The answer is   D", "D"),
    ("The answer is\t\tB", "B"),
    ("The answer is Heparin", "H"),                               # any A-N capital, even a word's
    ("The answer is Cardiac arrest", "C"),
    ("The answer is Both", "B"),
    ("The answer is Insulin", "I"),
    ("The answer is Aspirin", "A"),
    ("The answer is Digoxin, i.e. option B", "D"),                # rule 1 beats the later letter
    ("The answer is C, but option D is tempting.", "C"),
    ("The answer is C. \\boxed{D}", "C"),                          # boxed is not read first
    ("\\boxed{A} ... and so the answer is C", "C"),
    ("We see the answer is B and (D) is wrong", "B"),
    ("The answer is O, so B", "B"),                               # O is outside A-N: rule 2
    ("The answer is Z; choose C.", "C"),
]

# --- rule 1, several statements: the last wins ---------------------------------------------------
MULTIPLE_ANSWER_IS = [
    ("The answer is A. On reflection, the answer is C.", "C"),
    ("answer is B ... answer is D ... answer is A", "A"),
    ("First guess: the answer is D. Final: the answer is B", "B"),
    ("The answer is C\nThe answer is C", "C"),
    ("the answer is A, no wait, the answer is (B)", "A"),          # "(B)" does not match rule 1
    ("the answer is **D**; I said earlier the answer is C", "C"),
    ("The answer is E. Hmm, the answer is B.", "B"),
]

# --- rule 1 with letters beyond the four options (A-N, not the options) --------------------------
BEYOND_OPTIONS_ANSWER_IS = [(f"The answer is {x}", x) for x in "EFGHIJKLMN"]

# --- rule 2 ignores letters beyond the options: then the option text decides (insulin = D) -------
BEYOND_OPTIONS_STANDALONE = [(f"Option {x}, insulin", "D") for x in "EFGHIJKLMN"] + [
    ("I pick E: heparin", "B"),
    ("(F) warfarin", "C"),
    ("\\boxed{E} (insulin)", "D"),
]

# --- rule 2: bracketed letters --------------------------------------------------------------------
BRACKETED = [
    ("(A)", "A"),
    ("(B) heparin", "B"),
    ("[C]", "C"),
    ("Option (D).", "D"),
    ("(A) vs (B)", "B"),
    ("A)", "A"),
    ("B) because", "B"),
    ("{C}", "C"),
    ("(A)(B)", "B"),                          # ")" of (A) consumed, "(" of (B) is free
    ("The answer is (A). Option B is incorrect.", "B"),
    ("The answer is (C).", "C"),
    ("The answer is (D) not A", "A"),         # "A" at the end is not followed by a space
    ("<B>", "B"),
    ("'C'", "C"),
    ('"D"', "D"),
]

# --- rule 2: bold letters -------------------------------------------------------------------------
BOLD = [
    ("**B**", "B"),
    ("**Answer: C**", "C"),
    ("**D. insulin**", "D"),
    ("The best choice is **A**, not **C**", "C"),
    ("The answer is **A**. Option B is incorrect.", "B"),
    ("The answer is **D**", "D"),
    ("*B*", "B"),
    ("__B__ then warfarin", "C"),             # "_" is a word character: no letter; warfarin by rule 3
]

# --- rule 2: \boxed{} (no boxed step; the braces make the letter standalone) ---------------------
BOXED = [
    ("\\boxed{B}", "B"),
    ("So the final answer is \\boxed{D}", "D"),  # "answer is \" : no letter, rule 2 reads {D}
    ("\\boxed{A}", "A"),
    ("\\boxed{B} but option C was close", "C"),
    ("\\boxed{(C)}", "C"),
    ("\\boxed{\\text{D}}", "D"),
    ("$\\boxed{B}$", "B"),
    ("\\boxed{B. heparin}", "B"),
    ("\\boxed{heparin}", "B"),                  # no letter: option text (rule 3)
    ("\\boxed{insulin}", "D"),
    ("Option C looks right. \\boxed{A}", "A"),
    ("\\boxed{D} \\boxed{B}", "B"),
]

# --- rule 2: "answer: X" and similar ---------------------------------------------------------------
ANSWER_COLON = [
    ("Answer: C", "C"),
    ("Answer: (B)", "B"),
    ("Final answer: D.", "D"),
    ("answer:A", "A"),
    ("Answer: A", "A"),                           # at the end: not followed by a space
    ("Answer: A\n", "A"),                         # a newline is not a space
    ("Answer: A. ", "A"),
    ("Answer: A because it is heparin", "B"),     # "A " is the article: no letter; heparin (rule 3)
    ("Answer: A because it is aspirin", "A"),
    ("The answer is: B", "B"),                    # ":" breaks rule 1; rule 2 reads B
    ("Answer is B", "B"),                         # capital "Answer is" is not rule 1; rule 2
    ("ANSWER IS C", "C"),                         # letters inside ANSWER/IS are not standalone
    ("Answer - D", "D"),
    ("Correct option: C.", "C"),
]

# --- rule 2: trailing mentions of other letters: the last standalone letter wins -------------------
TRAILING = [
    ("C is correct. D is wrong.", "D"),
    ("I choose C; option D is a distractor.", "D"),
    ("Correct: B. Not C, not D.", "D"),
    ("B is correct; A is wrong", "B"),            # "A " is the article
    ("B is correct; (A) is wrong", "A"),
    ("Option A is unlikely and B is unlikely; C fits best.", "C"),
    ("D. Insulin. Compare with B.", "B"),
    ("C\n\nWhy not B? Because B lowers platelets.", "B"),
    ("We rule out A, B and D; hence C", "C"),
    ("We rule out A, B and C; hence D", "D"),
]

# --- rule 2: the consumed character after a letter ------------------------------------------------
ADJACENT = [
    ("A,B", "A"),
    ("A/B", "A"),
    ("C/D", "C"),
    ("A B", "B"),                                 # "A " is the article, then " B"
    ("B C", "B"),                                 # " " after B consumed: C has nothing before it
    ("B, C", "C"),
    ("B C D", "D"),
    ("B C D E", "D"),
    ("B\nC", "B"),
    ("B\n\nC", "C"),
    ("Options B and C", "C"),
    ("B-C", "B"),
    ("B - C", "C"),
    ("(B)(C)", "C"),
    ("B.C", "B"),
]

# --- rule 2: the article rule (a capital "A" followed by a space) ----------------------------------
ARTICLE = [
    ("A is correct, not heparin", "B"),           # no letter: heparin (rule 3)
    ("A.", "A"),
    ("A", "A"),
    ("(A) is correct", "A"),
    ("A\tis correct", "A"),                       # a tab is not a space
    ("Option A is best: warfarin", "C"),
    ("Choose A", "A"),
    ("A patient like this needs warfarin.", "C"),
    ("A\nA", "A"),
    ("A A", "A"),                                 # first "A " skipped, second at the end counts
    ("Option A is best, as is B", "B"),
]

# --- lower-case letters never count as letters (rules 1 and 2 are capital-only) --------------------
LOWERCASE = [
    ("b", "D"),                                   # no option text; every ratio 0 -> the last option
    ("the answer is c: warfarin", "C"),           # text (rule 3)
    ("i think (b) heparin", "B"),
    ("i think (b) aspirin", "A"),                 # the letter is ignored; the text decides
    ("answer: d -- insulin", "D"),
    ("\\boxed{b} aspirin", "A"),
    ("**c** heparin", "B"),
    ("the answer is a. aspirin and then heparin", "B"),
]

# --- no letter: option text (rule 3), last occurrence ---------------------------------------------
OPTION_TEXT = [
    ("It is heparin.", "B"),
    ("Aspirin, not warfarin.", "C"),
    ("warfarin rather than aspirin", "A"),
    ("HEPARIN", "B"),                             # lower-cased; letters inside a word are not standalone
    ("Insulin", "D"),
    ("give insulin, then aspirin, then heparin", "B"),
    ("heparin heparin aspirin heparin", "B"),
    ("low-dose aspirin", "A"),
    ("Warfarin is the drug", "C"),
    ("prefer insulin over heparin over warfarin", "C"),
]

# --- no letter and no option text: the most similar option (rule 4) -------------------------------
SIMILAR = [
    ("heparn", "B"),      # heparin: M = 6 ("hepar" + "n"), 12/13; others share at most "arn"
    ("insuln", "D"),      # insulin: M = 6, 12/13
    ("asprin", "A"),      # aspirin: M = 6 ("asp" + "rin"), 12/13
    ("", "D"),            # every ratio 0: the later option wins ties
    ("???", "D"),
    ("z", "D"),
    ("Z", "D"),
    ("b", "D"),
]

# --- letters inside words, digits, underscores, CJK -----------------------------------------------
INSIDE_WORDS = [
    ("Bradycardia suggests insulin", "D"),        # B followed by r: not standalone
    ("CABG then aspirin", "A"),
    ("DNA damage; warfarin", "C"),
    ("ECG shows AF; heparin", "B"),
    ("VitaminD and aspirin", "A"),
    ("A1 then heparin", "B"),                      # "1" is a word character
    ("B_ then warfarin", "C"),
    ("x-B", "B"),
    ("Type B", "B"),
    ("Hepatitis B infection; give insulin", "B"), # a standalone letter beats option text
    ("答案是B", "B"),                              # 是 is a CJK ideograph
    ("选B项", "B"),
    ("答案：C", "C"),                              # a full-width colon is not a word character
    ("答えはB", "D"),                              # は (kana) is a word character, not CJK: no letter;
                                                   # no option text, all ratios 0 -> the last option
]

# --- rule 0: "## Final Response\n\n" -----------------------------------------------------------------
FINAL_RESPONSE = [
    ("The answer is B\n## Final Response\n\nC", "C"),
    ("## Final Response\n\nThe answer is D. (B) is wrong", "D"),
    ("The answer is A.\n## Final Response\n\nwarfarin", "C"),
    ("The answer is A.\n## Final Response\nwarfarin", "A"),     # one newline: no split
    ("## Final Response\n\nA\n## Final Response\n\nheparin", "B"),
    ("## Final Response\n\n(C) or D?\n\n", "D"),
]

# --- PubMedQA (yes / no / maybe as A / B / C) -----------------------------------------------------
PUBMEDQA = [
    ("The answer is yes", "A"),
    ("yes", "A"),
    ("no", "B"),
    ("maybe", "C"),
    ("Yes.", "A"),
    ("No.", "B"),                                 # N is not an option letter (A-C)
    ("Maybe.", "C"),
    ("YES", "A"),
    ("NO", "B"),
    ("MAYBE", "C"),                               # A, B inside MAYBE are not standalone
    ("The answer is No", "N"),                    # rule 1 reads N (a capital of A-N)
    ("The answer is Maybe", "M"),
    ("The answer is Yes", "A"),                   # Y is outside A-N; text "yes"
    ("The answer is B", "B"),
    ("\\boxed{C}", "C"),
    ("(A) yes", "A"),
    ("\\boxed{yes}", "A"),
    ("\\boxed{no}", "B"),
    ("\\boxed{maybe}", "C"),
    ("yes, not maybe", "C"),                      # maybe at 9, no (in "not") at 5
    ("maybe not", "B"),                           # "no" in "not" at 6
    ("Yes, it is not known", "B"),                # "no" inside "known" is last
    ("The evidence supports yes", "A"),
    ("Diagnosis confirmed: yes", "A"),            # "no" in "diagnosis" comes before yes
    ("yes. Diagnosis", "B"),
    ("eyes", "A"),
    ("Answer: B", "B"),
    ("Answer: C (maybe)", "C"),
    ("A) yes", "A"),
    ("A no", "B"),                                # "A " is the article: text "no"
    ("A: yes", "A"),
    ("D", "C"),                                   # D is not an option letter; ratios 0 -> the last
    ("", "C"),
    ("y", "A"),                                   # yes 2/4, no 0, maybe 2/6
    ("m", "C"),                                   # yes 0, no 0, maybe 2/6
    ("n", "B"),                                   # no 2/3
    ("e", "A"),                                   # yes 2/4 > maybe 2/6
    ("s", "A"),                                   # yes 2/4
    ("o", "B"),                                   # no 2/3
    ("ye", "A"),                                  # yes 4/5
    ("The answer is: no", "B"),
    ("The answer is no", "B"),
    ("Final answer: B. yes", "B"),                # a letter beats the option text
    ("The answer is C (maybe)", "C"),
    ("I would say yes; the answer is A", "A"),
    ("probably yes", "A"),
]

# --- ten options: the letter range is A-J ----------------------------------------------------------
TEN_OPTIONS = [
    ("J", "J"),
    ("(I)", "I"),
    ("\\boxed{H}", "H"),
    ("The answer is K", "K"),                     # rule 1 still reads up to N
    ("(K) drug3", "D"),                           # K is not an option letter; text drug3
    ("E and then F", "F"),
]

# --- generated by templates: one rule per template, for each option letter -------------------------
# rule 1: the letter after "answer is"; rule 2: a bracketed, bold, boxed or "Answer:" letter
SAME_LETTER_TEMPLATES = [
    "The answer is {x}.",
    "The answer is ({x}).",
    "\\boxed{{{x}}}",
    "**{x}**",
    "Answer: {x}",
    "({x})",
    "{x}.",
    "The answer is {x} and not the others",
    "Final answer: **({x})**",
    "## Final Response\n\n{x}",
]
TEMPLATED_SAME = [(t.format(x=x), x) for t in SAME_LETTER_TEMPLATES for x in "ABCD"]

# "The answer is (X). Option Y is incorrect." -> rule 2's last letter: Y, except Y = A ("A " is the
# article), which leaves X.  Rows: X; columns: Y = A, B, C, D.
TRAILING_TABLE = {
    "A": "ABCD",
    "B": "BBCD",
    "C": "CBCD",
    "D": "DBCD",
}
TEMPLATED_TRAILING = [(f"The answer is ({x}). Option {y} is incorrect.", TRAILING_TABLE[x][j])
                      for x in "ABCD" for j, y in enumerate("ABCD")]
# "the answer is X ... the answer is Y" -> rule 1's last: Y for every pair
TEMPLATED_TWO_STATEMENTS = [(f"the answer is {x} ... the answer is {y}", y) for x in "ABCD" for y in "ABCD"]

CASES = {
    "answer_is": (ANSWER_IS, MC), "multiple_answer_is": (MULTIPLE_ANSWER_IS, MC),
    "beyond_options_answer_is": (BEYOND_OPTIONS_ANSWER_IS, MC),
    "beyond_options_standalone": (BEYOND_OPTIONS_STANDALONE, MC),
    "bracketed": (BRACKETED, MC), "bold": (BOLD, MC), "boxed": (BOXED, MC), "answer_colon": (ANSWER_COLON, MC),
    "trailing": (TRAILING, MC), "adjacent": (ADJACENT, MC), "article": (ARTICLE, MC),
    "lowercase": (LOWERCASE, MC), "option_text": (OPTION_TEXT, MC), "similar": (SIMILAR, MC),
    "inside_words": (INSIDE_WORDS, MC), "final_response": (FINAL_RESPONSE, MC), "pubmedqa": (PUBMEDQA, PQ),
    "ten_options": (TEN_OPTIONS, TEN), "templated_same": (TEMPLATED_SAME, MC),
    "templated_trailing": (TEMPLATED_TRAILING, MC), "templated_two_statements": (TEMPLATED_TWO_STATEMENTS, MC),
}


def test_at_least_200_hand_worked_strings():
    assert sum(len(c) for c, _ in CASES.values()) >= 200


@pytest.mark.parametrize("group", sorted(CASES))
def test_study_matcher_reads_the_hand_worked_letter(group):
    cases, options = CASES[group]
    wrong = [(text, want, extract_study(text, options)) for text, want in cases
             if extract_study(text, options) != want]
    assert not wrong, wrong


def test_score_compares_letters_ignoring_case_and_scores_the_study_example():
    # the task's example: peftarena's earlier boxed-first matcher said A, the study says B
    ex = "The answer is (A). Option B is incorrect."
    assert score_choice_study(ex, "B", MC) == {"extracted": "B", "correct": True}
    assert score_choice_study(ex, "A", MC) == {"extracted": "B", "correct": False}
    assert score_choice_study("\\boxed{C}", "c", MC)["correct"]            # answer_idx compared in lower case
    assert not score_choice_study("The answer is No", "B", PQ)["correct"]  # rule 1 reads N, never an option


def test_protocol_scorer_dispatches_to_the_study_matcher():
    from peftarena_cli.evaluation.protocols import STUDY
    from peftarena_cli.evaluation.scoring import score_one

    for fam in ("medical",):
        assert STUDY.settings[fam].scorer == "choice:study"
    row = score_one("choice:study", "The answer is (A). Option B is incorrect.", "B", {"options": MC})
    assert row == {"extracted": "B", "correct": True}
    # the built-in suite's scorer keeps its own (first-letter, strict-first) reading of the same text
    assert score_one("choice", "The answer is (A). Option B is incorrect.", "A", {"options": MC})["correct"]
