"""Professor and nurse biographies for SHIFT (Marks et al., section 4), after Bias in Bios
(De-Arteaga et al., 2019).

SHIFT trains a linear probe for profession on an *ambiguous* set where profession and gender
are perfectly correlated (male professors, female nurses), so the probe can learn gender
instead; ablating the spurious (gender) features should recover profession accuracy on a
*balanced* set and on each of the four groups. This module supplies those sets as a
``pandas.DataFrame`` with columns ``text`` (str), ``profession`` (0 = professor, 1 = nurse),
``gender`` (0 = male, 1 = female) and ``group`` ("male professor", ...).

Three sources give the same columns:

- ``"offline"`` (default): biographies generated here from hand-written templates and name
  lists (no downloads, no third-party text; see docs/bias_in_bios.md). Profession is carried
  by content words spread over the text, gender by first names and pronouns.
- ``"hub"``: the real ``LabHC/bias_in_bios`` data set through ``datasets.load_dataset``.
- a local ``.parquet`` / ``.jsonl`` file (or ``{"train": path, "test": path}``) in the hub
  schema: ``hard_text``, ``profession`` (professor = 21, nurse = 13), ``gender``.
"""

from __future__ import annotations

import functools
import json
import numbers
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

import pandas as pd

Part = Literal["train", "test"]
PARTS: tuple[Part, ...] = get_args(Part)

GROUPS: tuple[str, ...] = ("male professor", "female professor", "male nurse", "female nurse")
"""Group names: ``f"{gender} {profession}"``, in (gender, profession) order."""

SPLITS: dict[str, tuple[str, ...]] = {
    "ambiguous": ("male professor", "female nurse"),
    "balanced": GROUPS,
    **{group: (group,) for group in GROUPS},
}
"""Split name -> the groups it holds (each truncated to the same count)."""

SOURCES = ("offline", "hub")
HUB_NAME = "LabHC/bias_in_bios"
HUB_PROFESSIONS = {21: 0, 13: 1}
"""Bias in Bios profession ids kept -> ours (21 = professor -> 0, 13 = nurse -> 1)."""
HUB_FIELDS = ("hard_text", "profession", "gender")

OFFLINE_SIZES: dict[Part, int] = {"train": 2000, "test": 500}
"""Generated biographies per group and part."""

Source = str | Path | Mapping[str, str | Path]

# ---------------------------------------------------------------------------------------------
# Name lists and facts (hand-written; common first names, real institutions as plain facts)

MALE_NAMES = (
    "James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel "
    "Matthew Anthony Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy "
    "Ronald Edward Jason Jeffrey Ryan Jacob Gary Nicholas Eric Jonathan Stephen Larry Justin "
    "Scott Brandon Benjamin Samuel Gregory Alexander Patrick Frank Raymond Jack Dennis Jerry "
    "Peter Henry Adam Nathan Douglas Zachary Kyle Walter Ethan Jeremy"
).split()
FEMALE_NAMES = (
    "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy "
    "Betty Margaret Sandra Ashley Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah "
    "Stephanie Rebecca Sharon Laura Cynthia Kathleen Amy Angela Shirley Anna Brenda Pamela Emma "
    "Nicole Helen Samantha Katherine Christine Debra Rachel Carolyn Janet Catherine Maria "
    "Heather Diane Ruth Julie Olivia Joyce Victoria Kelly Christina Lauren Joan Evelyn"
).split()
SURNAMES = (
    "Smith Johnson Williams Brown Jones Miller Davis Garcia Rodriguez Wilson Martinez Anderson "
    "Taylor Thomas Moore Jackson Martin Lee Thompson White Harris Clark Lewis Robinson Walker "
    "Young Allen King Wright Scott Hill Green Adams Baker Nelson Carter Mitchell Roberts Turner "
    "Phillips Campbell Parker Evans Edwards Collins Stewart Murphy Cook Rogers Morgan Cooper "
    "Reed Bailey Bell Kelly Howard Ward Cox Patel Nguyen Kim Chen Singh Hughes Foster"
).split()
CITIES = (
    "Boston",
    "Chicago",
    "Seattle",
    "Denver",
    "Atlanta",
    "Austin",
    "Portland",
    "Philadelphia",
    "San Diego",
    "Minneapolis",
    "Pittsburgh",
    "Baltimore",
    "Cleveland",
    "Nashville",
    "Phoenix",
    "Toronto",
    "Vancouver",
    "Montreal",
    "London",
    "Manchester",
    "Edinburgh",
    "Dublin",
    "Sydney",
    "Melbourne",
    "Auckland",
    "Houston",
    "Detroit",
    "Sacramento",
    "Milwaukee",
    "Glasgow",
    "Leeds",
    "Ottawa",
)
UNIVERSITIES = (
    "the University of Michigan",
    "Stanford University",
    "the University of Toronto",
    "Ohio State University",
    "the University of Washington",
    "Boston University",
    "the University of Edinburgh",
    "McGill University",
    "the University of Melbourne",
    "Northwestern University",
    "the University of Texas at Austin",
    "Duke University",
    "the University of Chicago",
    "Cornell University",
    "the University of Manchester",
    "Rutgers University",
    "the University of Minnesota",
    "Johns Hopkins University",
    "the University of Sydney",
    "Arizona State University",
    "the University of Pittsburgh",
    "Vanderbilt University",
    "the University of British Columbia",
    "Emory University",
    "the University of Leeds",
    "Georgetown University",
    "Purdue University",
    "the University of Glasgow",
    "Trinity College Dublin",
    "the University of Auckland",
)
HOSPITALS = (
    "St. Mary's Hospital",
    "Mercy General Hospital",
    "Riverside Medical Center",
    "City General Hospital",
    "Lakeview Community Hospital",
    "Memorial Regional Hospital",
    "St. Joseph's Medical Center",
    "Children's Hospital",
    "Good Samaritan Hospital",
    "Valley Health Medical Center",
    "Northside Hospital",
    "Providence Hospital",
    "the Royal Infirmary",
    "University Hospital",
    "Grace Community Hospital",
    "St. Luke's Hospital",
    "Westside Regional Medical Center",
    "Baptist Memorial Hospital",
    "the county hospital",
    "Highland General Hospital",
    "Sacred Heart Hospital",
    "the Veterans Affairs medical center",
)
CLINICS = (
    "a community health clinic",
    "a family practice clinic",
    "an outpatient dialysis center",
    "a rural health clinic",
    "an urgent care center",
    "a walk-in clinic",
    "a women's health clinic",
    "a cancer treatment center",
)

# field, scholar, topics, courses, methods
FIELDS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "economics",
        "economist",
        ("labor markets", "monetary policy", "income inequality", "trade and development"),
        ("microeconomics", "econometrics"),
        ("field experiments", "large administrative data sets"),
    ),
    (
        "history",
        "historian",
        ("medieval Europe", "the history of science", "colonial trade", "the Cold War"),
        ("modern European history", "historical methods"),
        ("archival research", "oral histories"),
    ),
    (
        "physics",
        "physicist",
        ("quantum materials", "particle physics", "superconductivity", "laser optics"),
        ("classical mechanics", "quantum mechanics"),
        ("laboratory experiments", "numerical simulations"),
    ),
    (
        "chemistry",
        "chemist",
        ("catalysis", "organic synthesis", "battery materials", "protein folding"),
        ("organic chemistry", "physical chemistry"),
        ("spectroscopy", "computational models"),
    ),
    (
        "biology",
        "biologist",
        ("gene regulation", "coral reef ecology", "plant genetics", "the evolution of insects"),
        ("molecular biology", "evolution"),
        ("genome sequencing", "long-term field studies"),
    ),
    (
        "computer science",
        "computer scientist",
        ("machine learning", "computer security", "distributed systems", "programming languages"),
        ("algorithms", "operating systems"),
        ("formal proofs", "large-scale experiments"),
    ),
    (
        "mathematics",
        "mathematician",
        ("number theory", "algebraic geometry", "probability theory", "dynamical systems"),
        ("linear algebra", "real analysis"),
        ("rigorous proofs", "computer-assisted proofs"),
    ),
    (
        "sociology",
        "sociologist",
        ("urban poverty", "immigration", "social networks", "religion in public life"),
        ("social theory", "research methods"),
        ("surveys", "ethnographic fieldwork"),
    ),
    (
        "psychology",
        "psychologist",
        ("child development", "memory", "decision making", "language acquisition"),
        ("cognitive psychology", "statistics for psychology"),
        ("laboratory experiments", "longitudinal studies"),
    ),
    (
        "linguistics",
        "linguist",
        ("syntax", "endangered languages", "sound change", "bilingualism"),
        ("phonetics", "syntactic theory"),
        ("corpus analysis", "fieldwork with native speakers"),
    ),
    (
        "philosophy",
        "philosopher",
        ("the philosophy of mind", "ethics", "the philosophy of science", "logic"),
        ("moral philosophy", "symbolic logic"),
        ("conceptual analysis", "formal models"),
    ),
    (
        "political science",
        "political scientist",
        ("electoral systems", "international relations", "public opinion", "democratization"),
        ("comparative politics", "American government"),
        ("surveys", "statistical models"),
    ),
    (
        "anthropology",
        "anthropologist",
        ("kinship", "food and culture", "the archaeology of early cities", "migration"),
        ("cultural anthropology", "archaeology"),
        ("ethnographic fieldwork", "excavations"),
    ),
    (
        "mechanical engineering",
        "engineer",
        ("robotics", "fluid dynamics", "wind turbines", "advanced manufacturing"),
        ("thermodynamics", "control systems"),
        ("wind tunnel experiments", "computer simulations"),
    ),
    (
        "English literature",
        "literary scholar",
        ("Victorian novels", "Shakespeare", "modern poetry", "the literature of the sea"),
        ("the British novel", "creative writing"),
        ("close reading", "archival research"),
    ),
    (
        "geology",
        "geologist",
        ("earthquakes", "volcanoes", "glaciers", "the formation of mountain ranges"),
        ("physical geology", "mineralogy"),
        ("field mapping", "satellite data"),
    ),
    (
        "statistics",
        "statistician",
        ("Bayesian inference", "causal inference", "clinical trial design", "time series"),
        ("probability", "statistical inference"),
        ("mathematical models", "simulation studies"),
    ),
    (
        "neuroscience",
        "neuroscientist",
        ("the neural basis of memory", "sleep", "brain development", "vision"),
        ("systems neuroscience", "neuroanatomy"),
        ("brain imaging", "electrophysiology"),
    ),
    (
        "astronomy",
        "astronomer",
        ("exoplanets", "galaxy formation", "black holes", "the origin of stars"),
        ("introductory astronomy", "astrophysics"),
        ("telescope observations", "computer simulations"),
    ),
    (
        "education",
        "education researcher",
        ("early literacy", "teacher training", "school reform", "mathematics education"),
        ("educational psychology", "curriculum design"),
        ("classroom studies", "randomized trials"),
    ),
)
AGENCIES = (
    "the National Science Foundation",
    "the National Institutes of Health",
    "the European Research Council",
    "the Department of Energy",
    "the Mellon Foundation",
    "the Spencer Foundation",
    "the Social Sciences and Humanities Research Council",
    "the Wellcome Trust",
)
SOCIETIES = (
    "American Academy of Arts and Sciences",
    "Royal Society of Edinburgh",
    "American Association for the Advancement of Science",
    "British Academy",
    "Royal Society of Canada",
)
JOURNALS = (
    "Nature",
    "Science",
    "the Proceedings of the National Academy of Sciences",
    "PLOS ONE",
    "Nature Communications",
    "the Annual Review of its field",
)
PRESSES = (
    "Oxford University Press",
    "Cambridge University Press",
    "MIT Press",
    "Princeton University Press",
    "the University of Chicago Press",
    "Yale University Press",
)
PROFESSOR_AWARDS = (
    "a CAREER award from the National Science Foundation",
    "a Guggenheim Fellowship",
    "a Sloan Research Fellowship",
    "the university's distinguished teaching award",
    "an early career prize from a national society",
    "a best paper award",
)

# specialty, unit, patients, care topics of the specialty
SPECIALTIES: tuple[tuple[str, str, str, tuple[str, str]], ...] = (
    (
        "critical care",
        "intensive care unit",
        "critically ill adults",
        ("ventilator care", "sedation management"),
    ),
    (
        "pediatric",
        "pediatric ward",
        "sick children and their families",
        ("pain management for children", "family education"),
    ),
    (
        "oncology",
        "oncology unit",
        "patients undergoing chemotherapy",
        ("symptom management during chemotherapy", "palliative care"),
    ),
    (
        "emergency",
        "emergency department",
        "patients with injuries and sudden illness",
        ("triage", "trauma care"),
    ),
    (
        "neonatal",
        "neonatal intensive care unit",
        "premature babies",
        ("breastfeeding support", "care of premature infants"),
    ),
    (
        "labor and delivery",
        "maternity ward",
        "expectant mothers and newborns",
        ("breastfeeding support", "birth preparation"),
    ),
    ("geriatric", "geriatric ward", "older patients", ("fall prevention", "dementia care")),
    (
        "cardiac",
        "cardiac care unit",
        "heart patients",
        ("cardiac rehabilitation", "medication safety"),
    ),
    (
        "surgical",
        "surgical ward",
        "patients recovering from surgery",
        ("wound care", "pain management after surgery"),
    ),
    (
        "psychiatric",
        "mental health unit",
        "patients with mental illness",
        ("crisis intervention", "medication safety"),
    ),
    (
        "orthopedic",
        "orthopedic ward",
        "patients recovering from joint replacements",
        ("early mobility after surgery", "wound care"),
    ),
    (
        "dialysis",
        "dialysis unit",
        "patients with kidney failure",
        ("kidney care", "patient education"),
    ),
    (
        "hospice",
        "palliative care unit",
        "patients at the end of life",
        ("palliative care", "pain management"),
    ),
    ("burn", "burn unit", "patients with severe burns", ("wound care", "infection prevention")),
    (
        "neurology",
        "stroke unit",
        "stroke patients",
        ("stroke rehabilitation", "swallowing assessment"),
    ),
)
CARE_TOPICS = (
    "wound care",
    "pain management",
    "infection prevention",
    "patient education",
    "fall prevention",
    "medication safety",
    "discharge planning",
    "palliative care",
    "diabetes education",
    "breastfeeding support",
    "pressure ulcer prevention",
)
CERTIFICATIONS = (
    "basic life support",
    "advanced cardiac life support",
    "pediatric advanced life support",
    "critical care nursing",
    "oncology nursing",
    "trauma nursing",
    "neonatal resuscitation",
)
NURSE_AWARDS = (
    "the DAISY Award",
    "the hospital's Nurse of the Year award",
    "a regional award for nursing excellence",
    "a patient care award",
)
NURSE_ASSOCIATIONS = (
    "American Nurses Association",
    "Emergency Nurses Association",
    "Royal College of Nursing",
    "state nurses association",
    "Academy of Medical-Surgical Nurses",
)

HOBBIES = (
    "hiking",
    "cooking",
    "gardening",
    "photography",
    "cycling",
    "baking bread",
    "playing chess",
    "painting",
    "birdwatching",
    "playing the piano",
    "swimming",
    "reading mystery novels",
    "woodworking",
    "camping",
    "playing the guitar",
    "sailing",
)
LANGUAGES = ("Spanish", "French", "German", "Italian", "Portuguese", "Mandarin", "Japanese")
FAMILY = (
    "two children",
    "a daughter",
    "a son",
    "three children",
    "a dog",
    "two cats",
    "a rescue dog",
)

# ---------------------------------------------------------------------------------------------
# Templates. {slot} is filled per biography; [text] is optional (kept with probability 1/2);
# <a|b|c> picks one alternative. {S} is the sentence subject (pronoun, first name or title and
# surname, capitalized), {s} the same in the middle of a sentence, {He}/{he}/{His}/{his}/{him}
# pronouns, {full} the full name in an opening sentence.

PROFESSOR_OPENINGS: tuple[str, ...] = (
    "{full} is <an associate|an assistant|a full|a> professor <of|in the Department of> {field} "
    "at {univ}[, where {s} <leads|directs|runs> a research group on {topic}].",
    "{full} <teaches|lectures on> {course} at {univ}[ and is <a member|a fellow> of its "
    "<institute|center> for {topic}].",
    "Born in {city}, {first} {last} <joined|moved to> the {field} department at {univ} in {year}"
    "[ after <a postdoctoral fellowship|two years as a lecturer> at {univ2}].",
    "Based in {city}, {full} <studies|investigates|researches> {topic}[, with a particular "
    "interest in {topic2}].",
    "For more than {years} years, {full} has <studied|been researching|written about> {topic}"
    "[ at {univ}].",
    "{full} holds <an endowed chair|a named chair|a research chair> in {field} at {univ}.",
    "Dr. {first} {last} is <a researcher|a scholar|an academic> in {field} <whose work focuses "
    "on|who works on> {topic}.",
    "After earning {his} <PhD|doctorate> in {field} from {univ2}, {first} {last} <joined|took "
    "up a faculty position at> {univ}[ in {year}].",
    "{full} has been on the faculty of {univ} <since {year}|for {years} years>[, teaching "
    "courses in {course}].",
    "Originally from {city}, {full} is <a|an award-winning|a prominent> {scholar} at {univ}.",
    "{full}'s research <explores|examines|focuses on> {topic}[, drawing on {method}].",
    "{full} is <the chair|the head|the director of graduate studies> of the {field} department "
    "at {univ}.",
    "<A leading|A well-known|A respected> {scholar}, {full} <teaches|works> at {univ}[ and has "
    "published widely on {topic}].",
    "{full} <lectures|teaches> at {univ}, where {s} <supervises|advises> <doctoral|graduate|"
    "undergraduate> students working on {topic}.",
    "With more than {n_pub} <published papers|peer-reviewed articles> to {his} name, {full} is one "
    "of the most cited researchers in {field}[ at {univ}].",
    "Since {year}, {full} has <taught|held a faculty appointment> at {univ}[ in the {field} "
    "department].",
    "{full} <is|works as> <a tenured|a visiting|an emeritus> professor at {univ}.",
    "At {univ}, {full} <runs|leads> a <laboratory|research group> <that studies|working on> "
    "{topic}.",
    "{full} <works|has worked> in the {field} department at {univ}[ for {years} years].",
    "{full} is <an expert|a specialist> on {topic} and <teaches|lectures> {course} at {univ}.",
)
PROFESSOR_BODY: tuple[str, ...] = (
    "{S} <earned|received|completed> {his} <PhD|doctorate> in {field} at {univ2}[ in {year2}]"
    "[ and held a postdoctoral fellowship at {univ3}].",
    "{S} studied {field} as an undergraduate at {univ3} before <completing|finishing> a "
    "doctorate at {univ2}.",
    "Before <joining|coming to> {univ}, {s} was <a postdoctoral researcher|a lecturer|a research "
    "fellow> at {univ2}.",
    "{His} research <focuses on|examines|explores> {topic}[ and {topic2}].",
    "{S} has published <more than|over> {n_pub} <articles|papers> in journals such as "
    "{journal}[ and {journal2}].",
    "{His} <most recent|latest|first> book, on {topic}, was published by {press}[ in {year2}].",
    "{S} has received grants from {agency}[ and {agency2}] to support {his} work on {topic}.",
    "{His} <lab|group|team> <uses|relies on> {method} to <study|understand> {topic}.",
    "{S} teaches <undergraduate|graduate|introductory> courses <in|on> {course}[ and has won "
    "the university's teaching award].",
    "{S} has supervised <more than|over> {n_students} doctoral students, many of whom now hold "
    "faculty positions.",
    "{His} lectures on {course} are among the most popular in the department.",
    "{S} <serves|has served> as <an associate editor|an editor|a regular reviewer> for {journal}.",
    "{S} <chaired|has chaired> the department for {n_small} years[ and led its graduate program].",
    "In {year2}, {s} was elected a fellow of the {society}.",
    "{S} <received|was awarded|won> {prof_award} for {his} <research|work> on {topic}.",
    "{S} <regularly gives|has given> <invited|keynote> lectures at conferences <in|across> "
    "<Europe|Asia|North America|South America>.",
    "{S} is currently on sabbatical, writing a book about {topic}.",
    "{S} <spent|was> a visiting scholar at {univ3} in {year2}.",
    "{S} sits on <the faculty senate|the graduate admissions committee|the university's research "
    "ethics board>.",
    "<Prior to|Before> {his} academic career, {s} worked <in industry|as a consultant|for a think "
    "tank> for {n_small} years.",
    "<Students|Colleagues> know {him} for <demanding seminars|generous mentoring|clear lectures>"
    "[ and an open door].",
    "<Together with|With> collaborators at {univ2}, {s} <leads|runs> a project on {topic2}"
    "[ funded by {agency}].",
)
NURSE_OPENINGS: tuple[str, ...] = (
    "{full} is a <registered nurse|nurse practitioner|clinical nurse specialist|charge nurse|"
    "licensed practical nurse> <at|with> {hospital}[ in {city}].",
    "{full} <works|has worked> in the {unit} at {hospital}[, where {s} cares for {patients}].",
    "Born in {city}, {first} {last} <joined|started at> {hospital} in {year}[ after <nursing "
    "school|two years at a clinic>].",
    "Based in {city}, {full} <specializes|has specialized> in {specialty} nursing[ and "
    "{care_topic}].",
    "For more than {years} years, {full} has <cared for|looked after|nursed> {patients}[ at "
    "{hospital}].",
    "{full} <leads|manages|supervises> the nursing team <on|in> the {unit} at {hospital}.",
    "{full}, <RN|BSN, RN|MSN, RN|RN, CCRN>, <works night shifts|works twelve-hour shifts|is a "
    "staff nurse> <on|in> the {unit} of {hospital}.",
    "After earning {his} <nursing degree|Bachelor of Science in Nursing|BSN> from {univ2}, {first} "
    "{last} joined {hospital}[ in {year}].",
    "{full} has been part of the <nursing staff|care team> at {hospital} since {year}[, mostly on "
    "the {unit}].",
    "Originally from {city}, {full} <is|works as> a {specialty} nurse[ at {hospital}].",
    "{full}'s <work|practice> <focuses on|centers on> {care_topic}[ for {patients}] at {hospital}.",
    "{full} is the nurse manager of the {unit} at {hospital}.",
    "<A dedicated|A compassionate|An experienced> {specialty} nurse, {full} <works|practices> at "
    "{hospital}[ in {city}].",
    "{full} <works|practices> at {clinic}, where {s} <sees|treats|cares for> {patients}[ every "
    "day].",
    "With more than {years} years at the bedside, {full} is one of the most experienced nurses at "
    "{hospital}.",
    "Since {year}, {full} has <worked|been working> <in|on> the {unit} at {hospital}[ in {city}].",
    "{full} <is|works as> a <travel|home health|school|hospice> nurse <based in|in> {city}.",
    "At {hospital}, {full} <looks after|cares for> {patients} <on|in> the {unit}.",
    "{full} <works|has worked> <as a nurse|on the wards> at {hospital}[ for {years} years].",
    "{full} is <an expert|a specialist> in {care_topic} and works <on|in> the {unit} at "
    "{hospital}.",
)
NURSE_BODY: tuple[str, ...] = (
    "{S} <earned|received|completed> {his} <BSN|Bachelor of Science in Nursing|nursing degree> at "
    "{univ2}[ and later a master's degree in nursing from {univ3}].",
    "{S} <began|started> {his} career as <a nursing assistant|a nurse's aide|a new graduate "
    "nurse> at {hospital2}.",
    "Before joining {hospital}, {s} worked for {n_small} years <in|on> the {unit2} at {hospital2}.",
    "{S} is certified in {cert}[ and {cert2}].",
    "{S} <works|usually works> <night|day|twelve-hour|weekend> shifts and <looks after|cares for> "
    "up to {n_pat} patients[ at a time].",
    "{His} <colleagues|patients> describe {him} as <calm under pressure|patient and kind|a steady "
    "presence on the ward>.",
    "{S} <trains|mentors|precepts> <new graduate nurses|nursing students|new staff> on the {unit}.",
    "On a typical shift {s} <administers medications|monitors vital signs|dresses wounds>, "
    "<coordinates with physicians|educates families> and <keeps careful charts|updates care "
    "plans>.",
    "During the pandemic, {s} <volunteered|was redeployed> to the {unit2}[ at {hospital}].",
    "{S} <serves|has served> on the hospital's <patient safety|infection control|quality "
    "improvement> committee.",
    "{S} <received|was awarded> {nurse_award}[ in {year2}].",
    "Since {year2}, {s} has volunteered at a free clinic in {city2}, providing <vaccinations|wound "
    "care|health screenings>.",
    "{S} is a member of the {nurse_assoc}.",
    "{His} <main|particular> interest is {care_topic}[ for {patients}].",
    "{S} helped introduce a new <protocol|program> for {care_topic} on {his} ward.",
    "{S} <is studying|is enrolled> part-time <to become a nurse practitioner|for a Doctor of "
    "Nursing Practice> at {univ2}.",
    "<Patients|Families> on the {unit} <know|remember> {him} for {his} <humor|patience|calm>.",
    "{S} has worked in <emergency rooms|intensive care units|clinics> in {city2} and {city3}.",
    "{S} <regularly|often> <picks up|covers> extra shifts <on|in> the {unit}.",
    "{S} <teaches|leads> <CPR|first aid|basic life support> classes for the community[ on "
    "weekends].",
    "{S} spent {n_small} years as a <travel nurse|military nurse|home health nurse> before "
    "settling in {city}.",
    "<Working|Together> with doctors and pharmacists, {s} <plans|reviews> the care of each patient"
    "[ on the {unit}].",
)
NEUTRAL_BODY: tuple[str, ...] = (
    "Outside of work, {s} enjoys {hobby}[ and {hobby2}].",
    "{S} lives in {city} with {his} <partner|spouse>[ and {family}].",
    "{S} <speaks|is fluent in> {lang}[ and {lang2}].",
    "On weekends, {s} can often be found {hobby}[ with friends].",
    "{S} grew up in {city2}[ and still visits family there often].",
    "{S} and {his} <partner|spouse> have {family}.",
    "{S} has <run|completed> {n_small} marathons.",
    "{S} is <originally from|a native of> {city2}.",
    "In {his} spare time, {s} <volunteers at a local food bank|coaches a youth soccer team|sings "
    "in a community choir>.",
    "<When not at work|In the evenings>, {s} <likes|loves> {hobby}.",
    "{S} <has traveled widely|loves to travel> and <has visited|hopes to visit> every continent.",
    "{S} <enjoys|likes> spending time with {his} family[ in {city2}].",
)

_TOKEN = re.compile(r"\{(\w+)\}|\[|\]|<|>|\|")


@functools.cache
def _parse(template: str) -> tuple:
    """A template as a tree: str, ("slot", name), ("opt", seq), ("alt", (seq, ...))."""

    def seq(i: int, stop: str) -> tuple[tuple, int, str]:
        out: list = []
        alts: list[tuple] = []
        pos = i
        while pos < len(template):
            m = _TOKEN.search(template, pos)
            if m is None:
                out.append(template[pos:])
                pos = len(template)
                break
            if m.start() > pos:
                out.append(template[pos : m.start()])
            token, pos = m.group(0), m.end()
            if m.group(1):
                out.append(("slot", m.group(1)))
            elif token == "[":
                inner, pos, _ = seq(pos, "]")
                out.append(("opt", inner))
            elif token == "<":
                inner, pos, _ = seq(pos, ">")
                out.append(inner)
            elif token == "|" and stop == ">":
                alts.append(tuple(out))
                out = []
            elif token == stop:
                break
            else:
                raise ValueError(f"unbalanced {token!r} in template {template!r}")
        if stop == ">":
            return ("alt", (*alts, tuple(out))), pos, stop
        return tuple(out), pos, stop

    tree, pos, _ = seq(0, "")
    assert pos == len(template)
    return tree


def _expand(tree, fill, rng: random.Random) -> str:
    if isinstance(tree, str):
        return tree
    if tree and tree[0] == "slot":
        return fill(tree[1])
    if tree and tree[0] == "opt":
        return _expand(tree[1], fill, rng) if rng.random() < 0.5 else ""
    if tree and tree[0] == "alt":
        return _expand(rng.choice(tree[1]), fill, rng)
    return "".join(_expand(node, fill, rng) for node in tree)


_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU](?!ni|se|u))")


def _bio(rng: random.Random, female: bool, nurse: bool) -> str:
    """One biography (2-5 sentences, 40-120 words)."""
    first = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
    last = rng.choice(SURNAMES)
    he, his, him = ("she", "her", "her") if female else ("he", "his", "him")
    univ, univ2, univ3 = rng.sample(UNIVERSITIES, 3)
    city, city2, city3 = rng.sample(CITIES, 3)
    field, scholar, topics, courses, methods = rng.choice(FIELDS)
    topic, topic2 = rng.sample(topics, 2)
    specialty, unit, patients, care = rng.choice(SPECIALTIES)
    unit2 = rng.choice([s[1] for s in SPECIALTIES if s[1] != unit])
    hospital, hospital2 = rng.sample(HOSPITALS, 2)
    year = rng.randint(1995, 2021)
    values = {
        "first": first,
        "last": last,
        "he": he,
        "his": his,
        "him": him,
        "He": he.capitalize(),
        "His": his.capitalize(),
        "univ": univ,
        "univ2": univ2,
        "univ3": univ3,
        "city": city,
        "city2": city2,
        "city3": city3,
        "field": field,
        "scholar": scholar,
        "topic": topic,
        "topic2": topic2,
        "course": rng.choice(courses),
        "method": rng.choice(methods),
        "specialty": specialty,
        "unit": unit,
        "unit2": unit2,
        "patients": patients,
        "hospital": hospital,
        "hospital2": hospital2,
        "clinic": rng.choice(CLINICS),
        "care_topic": rng.choice(care if rng.random() < 0.6 else CARE_TOPICS),
        "year": str(year),
        "year2": str(rng.randint(1990, 2022)),
        "years": str(rng.randint(3, 30)),
        "n_small": rng.choice(["two", "three", "four", "five", "six", "seven"]),
        "n_pub": str(rng.choice([20, 30, 40, 50, 60, 80, 100, 120, 150, 200])),
        "n_students": str(rng.randint(5, 40)),
        "n_pat": rng.choice(["two", "three", "four", "five", "six", "eight"]),
        "prof_award": rng.choice(PROFESSOR_AWARDS),
        "nurse_award": rng.choice(NURSE_AWARDS),
        "nurse_assoc": rng.choice(NURSE_ASSOCIATIONS),
        "society": rng.choice(SOCIETIES),
        "press": rng.choice(PRESSES),
    }
    for key, pool in [
        ("journal", JOURNALS),
        ("agency", AGENCIES),
        ("cert", CERTIFICATIONS),
        ("hobby", HOBBIES),
        ("lang", LANGUAGES),
    ]:
        values[key], values[key + "2"] = rng.sample(pool, 2)
    values["family"] = rng.choice(FAMILY)
    titles = ["Ms." if female else "Mr.", ""] if nurse else ["Dr.", "Professor"]

    def fill(name: str) -> str:
        if name == "full":
            if not nurse and rng.random() < 0.2:
                return f"Dr. {first} {last}"
            return f"{first} {last}"
        if name in ("S", "s"):
            r = rng.random()
            if r < 0.6:
                return he.capitalize() if name == "S" else he
            if r < 0.8:
                return first
            return f"{rng.choice(titles)} {last}".strip()
        return values[name]

    openings, body = (NURSE_OPENINGS, NURSE_BODY) if nurse else (PROFESSOR_OPENINGS, PROFESSOR_BODY)
    while True:
        k = rng.choices([2, 3, 4, 5], weights=[2, 4, 4, 3])[0]
        n_neutral = sum(rng.random() < 0.25 for _ in range(k - 1))
        chosen = rng.sample(body, k - 1 - n_neutral)
        neutral = rng.sample(NEUTRAL_BODY, n_neutral)
        rest = chosen + neutral if rng.random() < 0.7 else rng.sample(chosen + neutral, k - 1)
        sentences = [_expand(_parse(t), fill, rng) for t in [rng.choice(openings), *rest]]
        while sum(len(x.split()) for x in sentences) < 40 and len(sentences) < 5:
            extra = rng.choice([t for t in body if t not in chosen])
            chosen.append(extra)
            sentences.insert(rng.randint(1, len(sentences)), _expand(_parse(extra), fill, rng))
        text = _ARTICLE.sub(r"\1n ", " ".join(sentences))
        if 40 <= len(text.split()) <= 120:
            return text


@functools.cache
def _offline_group(group: str) -> tuple[str, ...]:
    """All distinct generated bios of one group: train first, then test."""
    gender, profession = group.split()
    rng = random.Random(f"sfc_plugin.bias_in_bios/{group}/v1")
    total = OFFLINE_SIZES["train"] + OFFLINE_SIZES["test"]
    seen: dict[str, None] = {}
    while len(seen) < total:
        seen.setdefault(_bio(rng, gender == "female", profession == "nurse"))
    return tuple(seen)


def _offline(part: Part) -> pd.DataFrame:
    rows = []
    start = 0 if part == "train" else OFFLINE_SIZES["train"]
    for group in GROUPS:
        gender, profession = group.split()
        texts = _offline_group(group)[start : start + OFFLINE_SIZES[part]]
        rows += [(t, int(profession == "nurse"), int(gender == "female")) for t in texts]
    return pd.DataFrame(rows, columns=["text", "profession", "gender"])


# ---------------------------------------------------------------------------------------------
# Hub and local files (hub schema)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _from_hub_schema(records: list[dict], where: str, row_word: str = "row") -> pd.DataFrame:
    """Hub-schema records (``hard_text``, ``profession``, ``gender``) -> our columns, other
    professions dropped. ``where`` names the file in errors; rows are numbered from 1."""
    rows = []
    for i, record in enumerate(records, start=1):
        for field in HUB_FIELDS:
            if field not in record:
                raise ValueError(f"{where}: {row_word} {i} has no field {field!r}")
        text, profession, gender = (record[f] for f in HUB_FIELDS)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: {row_word} {i}: hard_text must be a non-empty string")
        if not _is_int(profession):
            raise ValueError(f"{where}: {row_word} {i}: profession {profession!r} is not an int")
        if not _is_int(gender) or gender not in (0, 1):
            raise ValueError(f"{where}: {row_word} {i}: gender {gender!r} is not 0 or 1")
        if int(profession) in HUB_PROFESSIONS:
            rows.append((text, HUB_PROFESSIONS[int(profession)], int(gender)))
    return pd.DataFrame(rows, columns=["text", "profession", "gender"])


def _read_file(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        for field in HUB_FIELDS:
            if field not in frame.columns:
                raise ValueError(f"{path}: no field {field!r} (columns: {list(frame.columns)})")
        return _from_hub_schema(frame[list(HUB_FIELDS)].to_dict("records"), str(path))
    records = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no} is not JSON: {e}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {line_no} is not a JSON object")
            records.append(record)
    return _from_hub_schema(records, str(path))


def _path(source: str | Path) -> Path:
    path = Path(source)
    if path.suffix not in (".parquet", ".jsonl"):
        raise ValueError(
            f"unknown source {str(source)!r}: choose one of {SOURCES}, a .parquet or .jsonl "
            'path, or {"train": path, "test": path}'
        )
    return path


def _load(source: Source, part: Part) -> pd.DataFrame:
    if isinstance(source, str) and source == "offline":
        return _offline(part)
    if isinstance(source, str) and source == "hub":
        import datasets  # lazy: only this source needs it (and the network)

        hub = datasets.load_dataset(HUB_NAME, split=part)
        records = hub.to_pandas().to_dict("records")  # type: ignore[union-attr]
        return _from_hub_schema(records, f"{HUB_NAME}:{part}")
    if isinstance(source, Mapping):
        unknown = set(source) - set(PARTS)
        if unknown:
            raise ValueError(f"source keys must be parts {PARTS}, got {sorted(unknown)}")
        if part not in source:
            raise ValueError(f"source has no file for part {part!r} (keys: {sorted(source)})")
        return _read_file(_path(source[part]))
    return _read_file(_path(source))


# ---------------------------------------------------------------------------------------------


def bias_in_bios(
    split: str,
    part: str = "train",
    *,
    source: Source = "offline",
    n: int | None = None,
    seed: int = 42,
) -> pd.DataFrame:
    """Biographies of professors and nurses for SHIFT.

    Returns a DataFrame (index 0..rows-1) with columns ``text`` (str), ``profession`` (int:
    0 = professor, 1 = nurse), ``gender`` (int: 0 = male, 1 = female) and ``group`` (str, one
    of ``GROUPS``).

    - ``split``: ``"ambiguous"`` (male professors and female nurses: profession == gender),
      ``"balanced"`` (all four groups) or one group name (``"female professor"``, ...). The
      groups of a split are truncated to equal counts and the rows shuffled with ``seed``.
    - ``part``: ``"train"`` or ``"test"`` (disjoint texts).
    - ``source``: ``"offline"`` (generated here: 2,000 bios per group in train, 500 in test;
      the texts do not depend on ``seed``, which only subsamples and shuffles), ``"hub"``
      (``LabHC/bias_in_bios`` via ``datasets``; needs the network), a ``.parquet``/``.jsonl``
      path in the hub schema (used for whichever ``part`` is asked) or ``{"train": path,
      "test": path}``.
    - ``n``: at most this many rows, rounded down to a multiple of the number of groups.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {tuple(SPLITS)}")
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}: choose one of {PARTS}")
    groups = SPLITS[split]
    if n is not None:
        if not _is_int(n) or n < 1:
            raise ValueError(f"n must be a positive int or None, got {n!r}")
        if n < len(groups):
            raise ValueError(f"n={n} is fewer than the {len(groups)} groups of split {split!r}")
    frame = _load(source, part)  # type: ignore[arg-type]
    frame["group"] = [
        f"{'female' if g else 'male'} {'nurse' if p else 'professor'}"
        for g, p in zip(frame["gender"], frame["profession"])
    ]
    indices = {group: list(frame.index[frame["group"] == group]) for group in groups}
    empty = [group for group, rows in indices.items() if not rows]
    if empty:
        raise ValueError(f"source {source!r} ({part}) has no rows of group(s) {empty}")
    count = min(len(rows) for rows in indices.values())
    if n is not None:
        count = min(count, n // len(groups))
    keep = []
    for group, rows in indices.items():
        random.Random(f"{seed}/{group}").shuffle(rows)
        keep += rows[:count]
    random.Random(seed).shuffle(keep)
    out = frame.loc[keep].reset_index(drop=True)
    return out.astype({"profession": "int64", "gender": "int64"})
