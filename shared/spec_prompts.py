"""The prompt families of `tinyinfer bench --speculative` (day 39).

GROUNDED: the answer repeats the input (summarise, extract, answer from a text, edit code or
prose), so an n-gram drafter finds the next tokens in the prompt. OPEN: the answer is new text,
where drafts rarely match. Texts are the project's own or in the public domain (Lincoln's
Gettysburg Address, 1863; Aesop in G. F. Townsend's translation, 1867).
"""

NOTICE = ("The Riverside Library will close for repairs from Monday 3 March to Friday 14 March. "
          "During the closure, books can be returned to the drop box by the north entrance, and "
          "loans due in that period are extended to Monday 17 March. The reading room reopens on "
          "Saturday 15 March with new lighting and twelve more desks.")

GETTYSBURG = ("Four score and seven years ago our fathers brought forth on this continent, a new nation, "
              "conceived in Liberty, and dedicated to the proposition that all men are created equal. "
              "Now we are engaged in a great civil war, testing whether that nation, or any nation so "
              "conceived and so dedicated, can long endure. We are met on a great battle-field of that war.")

FABLE = ("A hungry Fox saw some fine bunches of Grapes hanging from a vine that was trained along a high "
         "trellis, and did his best to reach them by jumping as high as he could into the air. But it was "
         "all in vain, for they were just out of reach: so he gave up trying, and walked away with an air "
         "of dignity and unconcern, remarking, \"I thought those Grapes were ripe, but I see now they are "
         "quite sour.\"")

CODE = '''def order_total(items, tax_rate):
    total = 0.0
    for item in items:
        total += item.price * item.quantity
    total = total * (1.0 + tax_rate)
    return round(total, 2)'''

GROUNDED = {
    "summarise": f"Summarise this notice in two sentences, keeping its wording where you can.\n\n{NOTICE}",
    "extract_dates": f"List every date in this notice and what happens on it, one per line.\n\n{NOTICE}",
    "answer_from_text": (f"{NOTICE}\n\nQuestion: when are loans due during the closure now due? "
                         "Answer with the sentence of the notice that says so."),
    "rename_variable": ("Rename the variable `total` to `subtotal` in this Python function and give "
                        f"back the whole function.\n\n```python\n{CODE}\n```"),
    "add_docstring": ("Add a one-line docstring to this Python function and give back the whole "
                      f"function, otherwise unchanged.\n\n```python\n{CODE}\n```"),
    "fix_spelling": ("Fix the spelling mistakes in this paragraph and copy everything else unchanged.\n\n"
                     "The libary will close for repiars from Monday 3 March. Books can be returnd to the "
                     "drop box by the north entrence, and the reading room reopens on Saturday with new "
                     "lightning and twelve more desks."),
    "repeat_speech": f"Repeat the first two sentences of this speech exactly, then say who gave it.\n\n{GETTYSBURG}",
    "retell_fable": f"Retell this fable in the same words, then give its moral in one line.\n\n{FABLE}",
}

OPEN = {
    "story": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "explain": "Explain to a ten-year-old why the sky is blue.",
    "tips": "Give me five tips for sleeping better.",
    "poem": "Write a short poem about the first snow of winter.",
    "letter": "Write a friendly letter inviting a neighbour to a garden party.",
    "ideas": "Suggest some names for a small bakery by the sea, with a reason for each.",
    "describe": "Describe a busy market in a small town on a Saturday morning.",
    "opinion": "Is it better to learn to cook at home or in a class? Argue one side.",
}

FAMILIES = {"grounded": GROUNDED, "open": OPEN}
